//! The data partition.

use crate::layout::Layout;

pub struct Mounted;
impl Mounted {
    pub fn describe(&self) -> String {
        String::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("not found")]
    NotFound,
}

pub async fn prepare(_layout: &Layout) -> Result<Mounted, DataError> {
    Err(DataError::NotFound)
}

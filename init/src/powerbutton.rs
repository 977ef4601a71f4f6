//! The ACPI power button: finds the input event devices named "Power Button" and
//! turns a press of KEY_POWER into a power-off request.

use std::io::Read;
use std::path::Path;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit Linux: timeval (16 bytes), type, code, value.
const EVENT_SIZE: usize = 24;

/// Watch every power button; call `pressed` on each press.
pub fn watch(sys: &Path, dev: &Path, pressed: impl Fn() + Send + Clone + 'static) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(sys.join("class/input")) else {
        return 0;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let label = std::fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
        if label.trim() != "Power Button" {
            continue;
        }
        let path = dev.join("input").join(&name);
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        let pressed = pressed.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("power-{name}"))
            .spawn(move || {
                let mut buf = [0u8; EVENT_SIZE];
                while f.read_exact(&mut buf).is_ok() {
                    let kind = u16::from_ne_bytes([buf[16], buf[17]]);
                    let code = u16::from_ne_bytes([buf[18], buf[19]]);
                    let value = i32::from_ne_bytes([buf[20], buf[21], buf[22], buf[23]]);
                    if kind == EV_KEY && code == KEY_POWER && value == 1 {
                        pressed();
                    }
                }
            });
        if spawned.is_ok() {
            crate::info!("watching the power button on {}", path.display());
            n += 1;
        }
    }
    n
}

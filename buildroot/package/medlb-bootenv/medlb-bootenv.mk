################################################################################
#
# medlb-bootenv: image/bootenv, installed as /usr/sbin/bootenv and init's
# /usr/lib/init/mark-good hook
#
################################################################################

MEDLB_BOOTENV_VERSION = local
MEDLB_BOOTENV_SITE = $(BR2_EXTERNAL_MEDLB_PATH)/../image/bootenv
MEDLB_BOOTENV_SITE_METHOD = local
MEDLB_BOOTENV_LICENSE = Apache-2.0

define MEDLB_BOOTENV_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/bootenv $(TARGET_DIR)/usr/sbin/bootenv
	mkdir -p $(TARGET_DIR)/usr/lib/init
	ln -sf ../../sbin/bootenv $(TARGET_DIR)/usr/lib/init/mark-good
endef

$(eval $(cargo-package))

################################################################################
#
# medlb: the workspace's release binaries (init, lbcore, lbctl)
#
################################################################################

MEDLB_VERSION = local
MEDLB_SITE = $(BR2_EXTERNAL_MEDLB_PATH)/..
MEDLB_SITE_METHOD = local
MEDLB_LICENSE = Apache-2.0
MEDLB_CARGO_BUILD_OPTS = --workspace --bins
MEDLB_IMAGE = $(BR2_EXTERNAL_MEDLB_PATH)/../image

define MEDLB_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/init $(TARGET_DIR)/init
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/lbcore $(TARGET_DIR)/usr/bin/lbcore
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/lbctl $(TARGET_DIR)/usr/bin/lbctl
	for l in init poweroff reboot halt; do ln -sf ../../init $(TARGET_DIR)/usr/sbin/$$l; done
	cp -a $(MEDLB_IMAGE)/rootfs/. $(TARGET_DIR)/
	grep -E '^boot ' $(MEDLB_IMAGE)/modules.txt | awk '{print $$2}' > $(TARGET_DIR)/etc/init/modules
	sed -n 's/^version *= *"\(.*\)"/\1/p' $(@D)/Cargo.toml | head -1 > $(TARGET_DIR)/etc/version
endef

$(eval $(cargo-package))

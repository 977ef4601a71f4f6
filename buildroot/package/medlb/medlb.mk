################################################################################
#
# medlb
#
################################################################################

# The workspace's binaries that image/programs.txt lists (FROM "workspace": init,
# lbcore, lbctl, lbweb), the services file and static files of image/rootfs and the
# boot modules of image/modules.txt.

MEDLB_VERSION = local
MEDLB_SITE = $(BR2_EXTERNAL_MEDLB_PATH)/..
MEDLB_SITE_METHOD = local
MEDLB_LICENSE = Apache-2.0
# the repository without its build outputs
MEDLB_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude /target
MEDLB_CARGO_BUILD_OPTS = --workspace --bins
MEDLB_IMAGE = $(BR2_EXTERNAL_MEDLB_PATH)/../image

# The lines of image/programs.txt without comments: NAME PATH FROM BUILDROOT [LINK...]
MEDLB_PROGRAMS = sed -e 's/\#.*//' $(MEDLB_IMAGE)/programs.txt

# $(call MEDLB_INSTALL_PROGRAMS,FROM,DIR): installs DIR/NAME as PATH, and its LINKs
# (relative symbolic links), for each program of image/programs.txt whose FROM is FROM
define MEDLB_INSTALL_PROGRAMS
	$(MEDLB_PROGRAMS) | while read -r name path from option links; do \
		[ "$$from" = "$(1)" ] || continue; \
		$(INSTALL) -D -m 0755 $(2)/$$name $(TARGET_DIR)$$path || exit 1; \
		for l in $$links; do \
			mkdir -p $$(dirname $(TARGET_DIR)$$l) && \
			ln -sfr $(TARGET_DIR)$$path $(TARGET_DIR)$$l || exit 1; \
		done; \
	done
endef

define MEDLB_INSTALL_TARGET_CMDS
	$(call MEDLB_INSTALL_PROGRAMS,workspace,$(@D)/target/$(RUSTC_TARGET_NAME)/release)
	cp -a $(MEDLB_IMAGE)/rootfs/. $(TARGET_DIR)/
	grep -E '^boot ' $(MEDLB_IMAGE)/modules.txt | awk '{print $$2}' > $(TARGET_DIR)/etc/init/modules
	sed -n 's/^version *= *"\(.*\)"/\1/p' $(@D)/Cargo.toml | head -1 > $(TARGET_DIR)/etc/version
endef

# Every program of image/programs.txt is in the target once all packages are
# installed (the system programs come from the packages Config.in selects), with
# its links (e2fsprogs makes mkfs.ext4 itself).
define MEDLB_CHECK_PROGRAMS
	$(MEDLB_PROGRAMS) | while read -r name path from option links; do \
		[ -n "$$name" ] || continue; \
		if [ ! -x $(TARGET_DIR)$$path ]; then \
			echo "medlb: $$path ($$name of image/programs.txt, from $$option) is not in the target" >&2; \
			exit 1; \
		fi; \
		for l in $$links; do \
			[ -e $(TARGET_DIR)$$l ] || ln -sr $(TARGET_DIR)$$path $(TARGET_DIR)$$l || exit 1; \
		done; \
	done
endef
MEDLB_TARGET_FINALIZE_HOOKS += MEDLB_CHECK_PROGRAMS

$(eval $(cargo-package))

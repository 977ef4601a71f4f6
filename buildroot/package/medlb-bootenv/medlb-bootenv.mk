################################################################################
#
# medlb-bootenv
#
################################################################################

# image/bootenv, installed as image/programs.txt says (FROM "image/bootenv":
# /usr/sbin/bootenv, and init's /usr/lib/init/mark-good hook). Its source is image/,
# not image/bootenv alone: bootenv compiles in image/slots.conf.

MEDLB_BOOTENV_VERSION = local
MEDLB_BOOTENV_SITE = $(BR2_EXTERNAL_MEDLB_PATH)/../image
MEDLB_BOOTENV_SITE_METHOD = local
MEDLB_BOOTENV_SUBDIR = bootenv
MEDLB_BOOTENV_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude /bootenv/target
MEDLB_BOOTENV_LICENSE = Apache-2.0

define MEDLB_BOOTENV_INSTALL_TARGET_CMDS
	$(call MEDLB_INSTALL_PROGRAMS,image/bootenv,$(MEDLB_BOOTENV_SRCDIR)/target/$(RUSTC_TARGET_NAME)/release)
endef

$(eval $(cargo-package))

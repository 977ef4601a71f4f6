#!/usr/bin/env bash
# Buildroot post-image: the same disk as image/build, from Buildroot's outputs, with the
# same layout description (image/layout/genimage.cfg), GRUB configuration and BIOS
# boot-code patch (image/post-image). Writes $BINARIES_DIR/medlb.raw.
set -euo pipefail
IMAGE=$BR2_EXTERNAL_MEDLB_PATH/../image
B=$BINARIES_DIR
parts=$B/medlb-parts
rm -rf "$parts" && mkdir -p "$parts/esp/EFI/BOOT" "$parts/esp/grub" "$parts/slot" "$parts/empty"
cp "$B/boot.img" "$parts/boot.img"
cp "$B/grub.img" "$parts/core.img"
cp "$B/efi-part/EFI/BOOT/bootx64.efi" "$parts/esp/EFI/BOOT/BOOTX64.EFI"
cp "$IMAGE/grub/grub.cfg" "$parts/esp/grub/grub.cfg"
# GRUB's environment block: header, variables, '#' up to 1024 bytes (no host tool needed)
env=$'# GRUB Environment Block\nboot_slot=a\ngood_slot=a\nboot_tries=\n'
{ printf '%s' "$env"; printf '%*s' $((1024 - ${#env})) '' | tr ' ' '#'; } >"$parts/esp/grub/grubenv"
cp "$B/bzImage" "$parts/slot/vmlinuz"
cp "$B/rootfs.cpio.zst" "$parts/slot/initrd.img"
(cd "$parts/slot" && sha256sum vmlinuz initrd.img | awk '{print "sha256 " $2 " " $1}') >"$parts/slot/manifest.txt"
(cd "$parts" && PATH=$HOST_DIR/bin:$HOST_DIR/sbin:$PATH genimage --config "$IMAGE/layout/genimage.cfg" \
	--rootpath empty --tmppath tmp --inputpath . --outputpath out)
"$IMAGE/post-image" "$parts/out/disk.raw"
mv "$parts/out/disk.raw" "$B/medlb.raw"

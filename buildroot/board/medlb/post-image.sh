#!/usr/bin/env bash
# Buildroot post-image: the same disk as image/build, from Buildroot's outputs, with the
# same layout description (image/layout/genimage.cfg), slot protocol (image/slots.conf:
# the environment block of a new disk), GRUB configuration and BIOS boot-code patch
# (image/post-image). Writes $BINARIES_DIR/medlb.raw.
set -euo pipefail
IMAGE=$BR2_EXTERNAL_MEDLB_PATH/../image
# shellcheck source=SCRIPTDIR/../../../image/slots.conf disable=SC1091
. "$IMAGE/slots.conf"
B=$BINARIES_DIR
parts=$B/medlb-parts
rm -rf "$parts" && mkdir -p "$parts/esp/EFI/BOOT" "$parts/esp/grub" "$parts/slot" "$parts/empty"
mkdir -p "$(dirname "$parts/esp$GRUBENV")"
cp "$B/boot.img" "$parts/boot.img"
cp "$B/grub.img" "$parts/core.img"
cp "$B/efi-part/EFI/BOOT/bootx64.efi" "$parts/esp/EFI/BOOT/BOOTX64.EFI"
cp "$IMAGE/grub/grub.cfg" "$parts/esp/grub/grub.cfg"
# GRUB's environment block: header, DEFAULT_ENV one variable a line, '#' up to 1024
# bytes (what grub-editenv writes, without its warning line; no host tool needed)
read -ra initial_env <<<"$DEFAULT_ENV"
env="# GRUB Environment Block"$'\n'$(printf '%s\n' "${initial_env[@]}")$'\n'
{ printf '%s' "$env"; printf '%*s' $((1024 - ${#env})) '' | tr ' ' '#'; } >"$parts/esp$GRUBENV"
cp "$B/bzImage" "$parts/slot/vmlinuz"
cp "$B/rootfs.cpio.zst" "$parts/slot/initrd.img"
(cd "$parts/slot" && sha256sum vmlinuz initrd.img | awk '{print "sha256 " $2 " " $1}') >"$parts/slot/manifest.txt"
(cd "$parts" && PATH=$HOST_DIR/bin:$HOST_DIR/sbin:$PATH genimage --config "$IMAGE/layout/genimage.cfg" \
	--rootpath empty --tmppath tmp --inputpath . --outputpath out)
"$IMAGE/post-image" "$parts/out/disk.raw"
mv "$parts/out/disk.raw" "$B/medlb.raw"

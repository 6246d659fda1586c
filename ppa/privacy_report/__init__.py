"""The privacy-utility report of several anonymiser settings (`run`)."""

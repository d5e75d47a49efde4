"""Images in and out: reading CT files and writing label maps, slice orientation, HU sanity
checks, and exact conversion between Slicer's KJI arrays and SimpleITK images."""

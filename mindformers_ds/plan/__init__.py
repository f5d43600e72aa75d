"""`mfds plan`: per-device memory, communication and step time of a layout, from the config
alone (no model is built), and a ranked search over valid layouts."""

"""One module per dataset: how to read (or make) it and what is known of it without reading it."""

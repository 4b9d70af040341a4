"""The draft artefact: its config (the `"sparrow"` block of config.json), checkpoint
reading and writing, the network, building a fresh draft for a target, and export as an
EAGLE checkpoint."""

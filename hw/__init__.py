"""Hardware generation: an Amaranth event-driven core sized from the model tables."""

"""Training and evaluation of the embedded tiny model (world, stages, analyser); nothing imports it."""

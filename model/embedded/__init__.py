"""The embedded tiny model: its synthetic world, vocabulary, text encoder and analyser."""

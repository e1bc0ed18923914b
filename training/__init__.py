"""Training and evaluation of the embedded tiny model: the synthetic world, the training stages
of the VAE and the DiT, the export of the shipped files, and the analyser that measures prompt
adherence. Imports the model, the samplers and the pipeline; nothing imports it."""

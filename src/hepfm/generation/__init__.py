"""Physics generation: labeled jets from Pythia 8 + FastJet, offline, in the public datasets' definitions."""

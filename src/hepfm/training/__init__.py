"""One training engine for every objective (supervised, JetCLR, MPM, JEPA)."""

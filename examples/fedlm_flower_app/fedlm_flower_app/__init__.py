"""fedlm as a Flower App (see fedlm.flower_engine)."""

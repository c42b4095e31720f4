"""Self-imagination: the LVLM imagines questions and contrastive responses from criteria."""

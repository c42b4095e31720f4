"""Training MACAROON (CRL) and its baselines on TRL and PEFT."""

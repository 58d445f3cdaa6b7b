"""LightningModules (prior and UCoS training, posterior sampling, neural samplers), the CLI and checkpoint
loading. Nothing is imported here: ``import lightning_modules.script_support`` must stay cheap so that a
script can install its signal handlers before torch and Lightning load."""

"""The bottom layer: config, chat format, models, run directory and stage context, engines, training."""

"""Training and evaluation machinery: data.py (records, tokenizers, loaders), optim.py (parameter
groups, schedule, AMP, EMA), loops.py (TrainState, train_step, train_one_epoch, evaluate),
trainer.py (a run from a config), checkpoint.py, inference.py (load_for_inference), dist.py."""

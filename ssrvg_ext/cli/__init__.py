"""Command-line tools, installed as console scripts (pyproject.toml) and runnable as modules:

    ssrvg-train  / python -m ssrvg_ext.cli.train           train a config
    ssrvg-eval   / python -m ssrvg_ext.cli.eval            evaluate a checkpoint
    ssrvg-demo   / python -m ssrvg_ext.cli.demo            draw a prediction
    ssrvg-predict / python -m ssrvg_ext.cli.predict        predictions for a JSONL or a folder of images
    ssrvg-report / python -m ssrvg_ext.cli.report          print a run's metrics table
    ssrvg-make-synthetic / python -m ssrvg_ext.cli.make_synthetic   write the embedded dataset
    ssrvg-info   / python -m ssrvg_ext.info                how the library was built
"""

from gantrain.cli import main

if __name__ == "__main__":  # not when a spawned worker process (plots, sweep composition) re-imports it
    raise SystemExit(main())

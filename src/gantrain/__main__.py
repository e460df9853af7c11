from gantrain.cli import main

if __name__ == "__main__":  # not when a spawned worker process (curves.plot_curves_of) re-imports it
    raise SystemExit(main())

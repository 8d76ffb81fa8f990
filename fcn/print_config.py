"""``--mode=config``: prints the resolved configuration and exits (mmsegmentation's ``print_config``).

Every key is printed; a value that differs from the built-in default is
followed by a comment naming the config file or the flag that set it. The
output is YAML that ``--config`` reads back to the same configuration.
Imports neither TensorFlow nor the dataset.
"""

from fcn import config as config_lib


def run(config: config_lib.Config, args) -> int:
    """Prints ``config`` with the sources ``FCN.py`` recorded in ``args.config_sources``."""
    sources = getattr(args, "config_sources", {})
    print("# The resolved configuration: built-in defaults, then --config, --set and the flags. A comment names what")
    print("# set each value that is not the default. Save it and pass it with --config to run exactly this.")
    print(config_lib.format_config(config, sources), end="")
    return 0

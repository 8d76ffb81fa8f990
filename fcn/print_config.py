"""``--mode=config``: prints the resolved configuration and exits (mmsegmentation's ``print_config``).

Every key is printed; a value that differs from the built-in default is
followed by a comment naming the config file or the flag that set it. The
output is YAML that ``--config`` reads back to the same configuration.
Imports neither TensorFlow nor the dataset.
"""

import yaml

from fcn import config as config_lib


def run(config: config_lib.Config, args) -> int:
    """Prints ``config`` with the sources ``FCN.py`` recorded in ``args.config_sources``."""
    sources = getattr(args, "config_sources", {})
    print("# The resolved configuration: built-in defaults, then --config, --set and the flags. A comment names what")
    print("# set each value that is not the default. Save it and pass it with --config to run exactly this.")
    print(format_config(config, sources), end="")
    return 0


def _yaml_value(value) -> str:
    """One value as YAML flow text on one line (``[512, 512]``, ``0.0001``, ``''``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def format_config(config: config_lib.Config, sources: dict[str, str] | None = None) -> str:
    """The whole config as YAML, every key, each value that differs from the default followed by what set it.

    ``yaml.safe_load`` of the text gives ``config_lib.to_dict(config)``.
    """
    sources = sources or {}
    lines = []

    def emit(values, defaults, prefix, indent):
        for name, value in values.items():
            if isinstance(value, dict):
                lines.append(f"{indent}{name}:")
                emit(value, defaults[name], f"{prefix}{name}.", indent + "  ")
                continue
            line = f"{indent}{name}: {_yaml_value(value)}"
            if value != defaults[name]:
                line += f"  # {sources.get(prefix + name, 'set')}"
            lines.append(line)

    emit(config_lib.to_dict(config), config_lib.to_dict(config_lib.Config()), "", "")
    return "\n".join(lines) + "\n"

"""pycri's configuration: a TOML file where every key has a default.

The file is optional (/etc/pycri/pycri.toml unless --config names another).
Unknown keys and values of the wrong type or range stop start-up with an
error naming the key, so a typo never silently falls back to a default.
"""

from pycri.config.load import ConfigSource, load_config
from pycri.config.render import config_to_toml, toml_key, toml_value
from pycri.config.sections import (
    CGROUP_DRIVERS,
    CONMON_IN_POD,
    DEFAULT_CONFIG_PATH,
    LOG_FORMATS,
    LOG_LEVELS,
    CdiSection,
    CniSection,
    Config,
    ConfigError,
    HandlerConfig,
    ImageLimits,
    ImageSection,
    MetricsSection,
    NriSection,
    RuntimeSection,
    StreamingSection,
    TimeoutsSection,
    TracingSection,
)
from pycri.config.validate import parse_host_port

__all__ = [
    "CGROUP_DRIVERS",
    "CONMON_IN_POD",
    "DEFAULT_CONFIG_PATH",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "CdiSection",
    "CniSection",
    "Config",
    "ConfigError",
    "ConfigSource",
    "HandlerConfig",
    "ImageLimits",
    "ImageSection",
    "MetricsSection",
    "NriSection",
    "RuntimeSection",
    "StreamingSection",
    "TimeoutsSection",
    "TracingSection",
    "config_to_toml",
    "load_config",
    "parse_host_port",
    "toml_key",
    "toml_value",
]

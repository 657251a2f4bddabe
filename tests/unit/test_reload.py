"""Which config changes a reload applies at once and which wait for a restart (pure planning)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycri.config import Config, HandlerConfig
from pycri.config.validate import validate
from pycri.reload import changed_keys, plan_reload

pytestmark = pytest.mark.unit


def changed(**sections: object) -> Config:
    """A default Config with top-level keys or whole sections replaced."""
    return dataclasses.replace(Config(), **sections)  # type: ignore[arg-type]


def test_nothing_changed_plans_nothing() -> None:
    plan = plan_reload(Config(), Config())
    assert plan.changes == [] and plan.applied == Config()


def test_log_level_format_and_registry_settings_apply_at_once() -> None:
    images = dataclasses.replace(
        Config().images,
        mirrors={"docker.io": ["http://127.0.0.1:5000"]},
        insecure_registries=["registry.lan:5000"],
        docker_config=Path("/etc/pycri/auth.json"),
        pull_timeout=30.0,
    )
    cdi = dataclasses.replace(Config().cdi, spec_dirs=[Path("/etc/cdi"), Path("/srv/cdi")])
    loaded = changed(log_level="debug", log_format="json", images=images, cdi=cdi)
    plan = plan_reload(Config(), loaded)
    assert sorted(plan.live) == [
        "cdi.spec_dirs",
        "images.docker_config",
        "images.insecure_registries",
        "images.mirrors",
        "images.pull_timeout",
        "log_format",
        "log_level",
    ]
    assert plan.restart == []
    assert plan.applied == loaded


def test_dirs_socket_and_cni_wait_for_a_restart_and_keep_their_running_values() -> None:
    loaded = changed(
        root_dir=Path("/srv/pycri"),
        socket=Path("/run/other.sock"),
        log_level="error",
        cni=dataclasses.replace(Config().cni, default_subnet="10.99.0.0/16"),
        nri=dataclasses.replace(Config().nri, enable=False),
    )
    plan = plan_reload(Config(), loaded)
    assert plan.live == ["log_level"]
    assert sorted(plan.restart) == ["cni.default_subnet", "nri.enable", "root_dir", "socket"]
    assert plan.applied.root_dir == Config().root_dir
    assert plan.applied.cni == Config().cni
    assert plan.applied.log_level == "error"


def with_handlers(handlers: dict[str, HandlerConfig], default: str = "runc") -> Config:
    return changed(runtime=dataclasses.replace(Config().runtime, handlers=handlers, default_handler=default))


def test_a_new_handler_and_annotations_apply_a_changed_path_or_a_removal_waits() -> None:
    running = with_handlers({"runc": HandlerConfig(Path("/usr/sbin/runc")), "old": HandlerConfig(Path("/usr/bin/old"))})
    loaded = with_handlers(
        {
            "runc": HandlerConfig(Path("/usr/local/sbin/runc"), allowed_annotations=["run.oci.*"]),
            "kata.v2": HandlerConfig(Path("/usr/bin/crun")),
        },
        default="kata.v2",
    )
    plan = plan_reload(running, loaded)
    assert sorted(plan.live) == [
        "runtime.default_handler",
        'runtime.handlers."kata.v2"',
        "runtime.handlers.runc.allowed_annotations",
    ]
    assert sorted(plan.restart) == ["runtime.handlers.old", "runtime.handlers.runc.path"]
    handlers = plan.applied.runtime.handlers
    assert handlers["runc"] == HandlerConfig(Path("/usr/sbin/runc"), allowed_annotations=["run.oci.*"])
    assert handlers["old"] == running.runtime.handlers["old"]
    assert handlers["kata.v2"] == loaded.runtime.handlers["kata.v2"]
    assert plan.applied.runtime.default_handler == "kata.v2"


def test_the_running_config_is_never_changed() -> None:
    running = Config()
    snapshot = dataclasses.replace(running)
    plan = plan_reload(running, changed(log_level="debug", root_dir=Path("/x")))
    assert running == snapshot
    assert plan.applied is not running


handler_configs = st.builds(
    HandlerConfig,
    path=st.sampled_from([Path("/usr/sbin/runc"), Path("/usr/bin/crun")]),
    root=st.sampled_from([None, Path("/run/h")]),
    allowed_annotations=st.lists(st.sampled_from(["run.oci.*", "io.kubernetes.*"]), max_size=2),
)
handler_tables = st.dictionaries(st.sampled_from(["runc", "crun", "kata"]), handler_configs, min_size=1)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    handlers = draw(handler_tables)
    config = changed(
        log_level=draw(st.sampled_from(["debug", "info", "error"])),
        root_dir=draw(st.sampled_from([Path("/var/lib/pycri"), Path("/srv/pycri")])),
        runtime=dataclasses.replace(
            Config().runtime,
            handlers=handlers,
            default_handler=draw(st.sampled_from(sorted(handlers))),
            pause_image=draw(st.sampled_from(["pause:3.9", "pause:3.10"])),
        ),
        images=dataclasses.replace(
            Config().images,
            mirrors=draw(st.dictionaries(st.sampled_from(["docker.io", "quay.io"]), st.just(["http://m"]))),
            max_concurrent_downloads=draw(st.integers(1, 4)),
        ),
    )
    validate(config)
    return config


@given(configs(), configs())
def test_every_change_is_applied_or_kept_and_the_result_is_valid(running: Config, loaded: Config) -> None:
    plan = plan_reload(running, loaded)
    validate(plan.applied)
    assert len(plan.changes) == len(changed_keys(running, loaded))
    for change in plan.changes:
        assert change.running != change.configured
    # Applying the same file again changes only what waits for a restart.
    again = plan_reload(plan.applied, loaded)
    assert again.live == [] and sorted(again.restart) == sorted(plan.restart)

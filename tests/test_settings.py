"""Settings from the environment, the TOML file and OLLAMA_*; bad values stop start-up with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from proxy import cli
from proxy.config.settings import Settings, SettingsError, env_warnings, load_settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "vramgate.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("VRAMGATE_", "OLLAMA_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.upstream == "http://127.0.0.1:11434"
    assert settings.listen == "127.0.0.1:11435" and settings.listen_address == ("127.0.0.1", 11435)
    assert settings.connect_timeout == 5.0 and settings.read_timeout == 0.0


@pytest.mark.parametrize("value,expected", [
    ("ollama", "http://ollama:11434"),
    ("ollama:8080", "http://ollama:8080"),
    (":11435", "http://127.0.0.1:11435"),
    ("0.0.0.0", "http://0.0.0.0:11434"),
    ("http://gpu-box", "http://gpu-box:80"),
    ("https://gpu-box", "https://gpu-box:443"),
    ("https://gpu-box:8443/ollama/", "https://gpu-box:8443/ollama"),
    ("[::1]:11434", "http://[::1]:11434"),
    ("  http://ollama:11434  ", "http://ollama:11434"),
])
def test_upstream_accepts_ollama_host_forms(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv("VRAMGATE_UPSTREAM", value)
    assert load_settings().upstream == expected


def test_toml_file_overlaid_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "vg.toml"
    config.write_text('upstream = "ollama:11434"\nlisten = "0.0.0.0:11434"\nread_timeout = 600\n')
    from_file = load_settings(config)
    assert (from_file.upstream, from_file.listen, from_file.read_timeout) == ("http://ollama:11434", "0.0.0.0:11434", 600)
    monkeypatch.setenv("VRAMGATE_LISTEN", "127.0.0.1:9999")
    monkeypatch.setenv("VRAMGATE_CONFIG", str(config))
    both = load_settings()
    assert both.listen == "127.0.0.1:9999" and both.upstream == "http://ollama:11434"


def test_ollama_server_variables_are_read_and_vramgate_ones_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "4")
    monkeypatch.setenv("OLLAMA_KV_CACHE_TYPE", "Q8_0")
    monkeypatch.setenv("OLLAMA_FLASH_ATTENTION", "1")
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "8192")
    settings = load_settings()
    assert (settings.num_parallel, settings.kv_cache_type, settings.flash_attention, settings.context_length) == (
        4, "q8_0", "on", 8192)
    monkeypatch.setenv("VRAMGATE_NUM_PARALLEL", "2")
    assert load_settings().num_parallel == 2


def test_example_config_documents_every_setting_with_its_default() -> None:
    text = EXAMPLE.read_text()
    keys = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.MULTILINE))
    assert keys == set(Settings.model_fields), "config/vramgate.toml must hold exactly the settings"
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^#? ?[a-z_]+ = ", line):
            assert lines[i - 1].startswith("# "), f"no comment line above {line!r}"
    from_example = load_settings(EXAMPLE)
    assert from_example == load_settings()  # the example holds the defaults
    optional_paths = {"audit_file", "policy_file", "tokens_file", "admin_token", "state_dir"}  # unset by default: commented out
    assert set(tomllib.loads(text)) == set(Settings.model_fields) - optional_paths


def test_the_console_script_and_module_share_main() -> None:
    import tomllib as _toml

    scripts = _toml.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"vramgate": "proxy.cli:main"}
    assert "from proxy.cli import main" in (REPO / "proxy" / "__main__.py").read_text()


@pytest.mark.parametrize("env,args,expected", [
    ({"VRAMGATE_UPSTREAM": "ftp://ollama"}, [], "invalid setting VRAMGATE_UPSTREAM: unsupported scheme 'ftp'"),
    ({}, ["--upstream", "ollama:99999"], "invalid setting --upstream: invalid port '99999'"),
    ({"VRAMGATE_CONNECT_TIMEOUT": "-1"}, [], "invalid setting VRAMGATE_CONNECT_TIMEOUT"),
    ({"VRAMGATE_LOG_FORMAT": "xml"}, [], "invalid setting VRAMGATE_LOG_FORMAT"),
    ({"VRAMGATE_LISTEN": "nowhere"}, [], "invalid setting VRAMGATE_LISTEN: expected host:port"),
    ({"VRAMGATE_CONFIG": "/no/such/file.toml"}, [], "config file /no/such/file.toml does not exist: check VRAMGATE_CONFIG"),
    ({"OLLAMA_NUM_PARALLEL": "many"}, [], "invalid setting OLLAMA_NUM_PARALLEL: "),
])
def test_invalid_settings_print_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], args: list[str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("vramgate: ")
    assert expected in captured.err


def test_bad_toml_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "x.toml").write_text('upstream = "ollama"\nlisten = ":1"\nfoo bar\n')
    assert cli.main(["--config", "config/x.toml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("vramgate: cannot read settings file config/x.toml: Expected '=' after a key")
    assert "(line 3, column 5)" in err


def test_python_m_proxy_exits_2_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRAMGATE_", "OLLAMA_"))}
    env["VRAMGATE_READ_TIMEOUT"] = "soon"
    done = subprocess.run([sys.executable, "-m", "proxy"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("vramgate: invalid setting VRAMGATE_READ_TIMEOUT")


def settings_error(config: Path | None = None, **overrides: object) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(config, **overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_problem_is_named_as_the_user_wrote_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "x.toml"
    config.write_text('upstream = "ftp://x"\n')
    assert settings_error(config).startswith(f"invalid setting upstream (in {config}): unsupported scheme 'ftp'")
    assert settings_error(config, upstream="ollama:0").startswith("invalid setting --upstream: invalid port '0'")
    monkeypatch.setenv("VRAMGATE_UPSTREAM", "gopher://x")  # the environment wins over the file: it is the culprit
    assert settings_error(config).startswith("invalid setting VRAMGATE_UPSTREAM: unsupported scheme 'gopher'")
    monkeypatch.setenv("VRAMGATE_UPSTREAM", "ollama")
    config.write_text('read_timeout = "soon"\n')  # and a key only the file sets is still the file's
    assert settings_error(config).startswith(f"invalid setting read_timeout (in {config}): ")


def test_unknown_key_in_the_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "x.toml"
    config.write_text('upstraem = "ollama"\n')
    assert settings_error(config) == f"unknown setting upstraem (in {config}); did you mean upstream?"


@pytest.mark.parametrize("where", ["env", "file"])
def test_the_value_is_said_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    config = tmp_path / "x.toml"
    config.write_text('registry = "ftp://x"\n')
    if where == "env":
        monkeypatch.setenv("VRAMGATE_REGISTRY", "ftp://x")
    message = settings_error(config)
    assert message.count("ftp://x") == 1, message
    monkeypatch.setenv("VRAMGATE_CONNECT_TIMEOUT", "-1")
    assert settings_error().endswith("Input should be greater than 0 (got '-1')")


@pytest.mark.parametrize("value,problem", [
    ('[{name: "RTX 4090"}]', "Expecting property name enclosed in double quotes"),
    ("RTX 4090:24GiB", "Expecting value: line 1 column 1"),
])
def test_malformed_static_gpus_says_it_must_be_a_json_list(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("VRAMGATE_STATIC_GPUS", value)
    message = settings_error()
    assert message.startswith(f"invalid setting VRAMGATE_STATIC_GPUS: {value!r} is not valid JSON ({problem}")
    assert message.endswith('it must be a JSON list of objects like [{"name": "RTX 4090", "total": "24GiB"}]')
    assert "EnvSettingsSource" not in message and "static_gpus" not in message


def test_static_gpus_of_the_wrong_shape_show_the_shape(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VRAMGATE_STATIC_GPUS", '{"name": "RTX 4090", "total": "24GiB"}')
    assert settings_error() == ('invalid setting VRAMGATE_STATIC_GPUS: Input should be a valid list; VRAMGATE_STATIC_GPUS'
                                ' must be a JSON list of objects like [{"name": "RTX 4090", "total": "24GiB"}]')
    monkeypatch.setenv("VRAMGATE_STATIC_GPUS", '[{"name": "RTX 4090", "total": "24GiB", "fre": "1GiB"}]')
    assert settings_error().startswith("invalid setting VRAMGATE_STATIC_GPUS[0].fre: Extra inputs are not permitted")
    monkeypatch.delenv("VRAMGATE_STATIC_GPUS")
    config = tmp_path / "x.toml"
    config.write_text('static_gpus = [{name = "RTX 4090"}]\n')
    assert settings_error(config) == (f"invalid setting static_gpus[0].total (in {config}): Field required; static_gpus"
                                      ' must be a list of objects like [{name = "RTX 4090", total = "24GiB"}]')


def test_a_static_gpu_with_more_free_than_total_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRAMGATE_STATIC_GPUS", '[{"name": "RTX 4090", "total": "24GiB", "free": "30GiB"}]')
    assert settings_error().startswith(
        "invalid setting VRAMGATE_STATIC_GPUS[0]: free (30.0 GiB) is larger than total (24.0 GiB) for GPU 'RTX 4090'")
    monkeypatch.delenv("VRAMGATE_STATIC_GPUS")
    config = tmp_path / "x.toml"
    config.write_text('static_gpus = [{name = "A", total = "8GiB"}, {name = "B", total = 100, free = 101}]\n')
    assert settings_error(config).startswith(f"invalid setting static_gpus[1] (in {config}): free (101 B) is larger")
    assert load_settings(gpu="static", static_gpus=[{"name": "A", "total": "8GiB", "free": "8GiB"}]).static_gpus


def test_static_gpu_mode_without_gpus_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRAMGATE_GPU", "static")
    assert settings_error().startswith(
        'invalid setting VRAMGATE_GPU: "static" needs at least one GPU in static_gpus; set VRAMGATE_STATIC_GPUS to')
    monkeypatch.delenv("VRAMGATE_GPU")
    config = tmp_path / "x.toml"
    config.write_text('gpu = "static"\n')
    assert settings_error(config).startswith(f'invalid setting gpu (in {config}): "static" needs at least one GPU')
    monkeypatch.setenv("VRAMGATE_STATIC_GPUS", '[{"name": "RTX 4090", "total": "24GiB"}]')
    assert load_settings(config).static_gpus[0].total == 24 * 1024**3


def test_unknown_vramgate_variables_are_named_with_the_closest_real_one() -> None:
    env = {"VRAMGATE_UPSTRAEM": "ollama", "VRAMGATE_CONFIG": "x.toml", "VRAMGATE_UPSTREAM": "ollama",
           "vramgate_listen": ":1", "VRAMGATE_XYZZY": "1", "OLLAMA_HOST": "x", "PATH": "/bin"}
    assert env_warnings(env) == [
        "unknown environment variable VRAMGATE_UPSTRAEM is ignored; did you mean VRAMGATE_UPSTREAM?",
        "unknown environment variable VRAMGATE_XYZZY is ignored; "
        "the variables are VRAMGATE_<KEY> for each key in config/vramgate.toml",
    ]

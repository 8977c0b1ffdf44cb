"""Bearer tokens: hashing, the tokens file (parse, render, errors), the header, and ``vramgate token``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from proxy.identity import token_command
from proxy.identity.tokens import HEADER, TokenBook, TokensError, bearer_token, hash_token, new_token

ABC = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2's "abc"
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of ""


def test_a_token_is_kept_as_its_sha256() -> None:
    assert hash_token("abc") == ABC
    assert hash_token("") == EMPTY


def test_new_tokens_are_long_random_and_distinct() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert token.startswith("vg_") and len(token) == 3 + 43  # 32 bytes in unpadded base64
        assert bearer_token(f"Bearer {token}") == token  # usable as a header as it is


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"),
    ("bearer abc", "abc"),
    ("BEARER abc", "abc"),
    ("  Bearer   vg_x-y_z  ", "vg_x-y_z"),
    ("Bearer\tabc", "abc"),
    (None, None),
    ("", None),
    ("   ", None),
    ("Bearer", None),
    ("Bearer ", None),
    ("Basic YWxpY2U6c2VjcmV0", None),
    ("Bearer a b", None),
    ("Bearerabc", None),
    ("abc", None),
])
def test_the_token_in_an_authorization_header(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


FILE = f"""{HEADER}
[tokens]
"{ABC}" = "alice"
"{EMPTY}" = "bob"
"""


def test_a_file_maps_tokens_to_users() -> None:
    book = TokenBook.parse(FILE, "tokens.toml")
    assert book.lookup("abc") == "alice"
    assert book.lookup("abd") is None
    assert book.lookup("") is None  # an empty token is nobody's, even with the hash of "" in the file
    assert book.users() == ["alice", "bob"]
    assert book.counts() == {"alice": 1, "bob": 1}


def test_an_empty_file_and_an_empty_table_are_empty_books() -> None:
    assert TokenBook.parse("", "t.toml").users() == []
    assert TokenBook.parse("[tokens]\n", "t.toml").users() == []


def test_upper_case_hex_is_the_same_hash() -> None:
    book = TokenBook.parse(f'[tokens]\n"sha256:{ABC[7:].upper()}" = "alice"\n', "t.toml")
    assert book.lookup("abc") == "alice"


def test_the_book_cannot_be_changed_in_place() -> None:
    book = TokenBook.parse(FILE, "t.toml")
    with pytest.raises(TypeError):
        book.users_by_hash["sha256:" + "0" * 64] = "mallory"  # type: ignore[index]


@pytest.mark.parametrize(("text", "message"), [
    ("[tokens\n", "tokens.toml: not valid TOML: "),
    (f'[tokens]\n"{ABC}" = "alice"\n"sha256:abc" = "bob"\n',
     'tokens.toml: line 3: a key is not "sha256:" and 64 hex digits'),
    ('[tokens]\n"vg_secretsecret" = "bob"\n',
     'tokens.toml: line 2: a key is not "sha256:" and 64 hex digits (it looks like a token itself'),
    (f'[tokens]\n"{ABC}" = ""\n', "tokens.toml: line 2: a user name must be non-empty text"),
    (f'[tokens]\n"{ABC}" = "alice smith"\n',
     "tokens.toml: line 2: user name 'alice smith' has whitespace or a control character in it"),
    (f'[tokens]\n"{ABC}" = 7\n', "tokens.toml: line 2: the user must be a string, not a int"),
    (f'[tokens]\n"{ABC}" = "alice"\n"sha256:{ABC[7:].upper()}" = "bob"\n',
     "tokens.toml: line 3: the same hash is already given to another user"),
    ('[token]\n', "tokens.toml: unknown key 'token' at the top level"),
    ('tokens = 3\n', "tokens.toml: 'tokens' must be a table ([tokens]), not a int"),
])
def test_a_bad_file_says_what_and_where_in_one_line(text: str, message: str) -> None:
    with pytest.raises(TokensError) as error:
        TokenBook.parse(text, "tokens.toml")
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_invalid_toml_says_which_line() -> None:
    with pytest.raises(TokensError) as error:
        TokenBook.parse(f'[tokens]\n"{ABC}" = "alice"\n"{EMPTY}" "bob"\n', "t.toml")
    assert "line 3" in str(error.value)


def test_a_bad_key_is_not_quoted_back() -> None:
    """A key that is not a hash may be a token pasted in by mistake: the error must not repeat it."""
    with pytest.raises(TokensError) as error:
        TokenBook.parse('[tokens]\n"vg_Qw3rTy-the-real-token" = "bob"\n', "t.toml")
    assert "Qw3rTy" not in str(error.value)


def test_render_is_sorted_stable_and_parses_back() -> None:
    book = TokenBook({hash_token("t3"): "zoe", hash_token("t1"): "alice", hash_token("t2"): 'o"brien\\x'})
    text = book.render()
    lines = text.splitlines()
    assert lines[0] == HEADER and lines[1] == "[tokens]"
    assert [line.split(" = ")[1] for line in lines[2:]] == ['"alice"', r'"o\"brien\\x"', '"zoe"']
    again = TokenBook.parse(text, "t.toml")
    assert again == book and again.render() == text
    assert again.lookup("t2") == 'o"brien\\x'
    assert "t1" not in text.replace(hash_token("t1"), "")  # only hashes are written


def test_adding_and_removing_tokens() -> None:
    book = TokenBook().with_token("alice", "one").with_token("alice", "two").with_token("bob", "three")
    assert book.counts() == {"alice": 2, "bob": 1}
    assert book.lookup("one") == book.lookup("two") == "alice"
    without = book.without_user("alice")
    assert without.users() == ["bob"] and without.lookup("one") is None
    assert book.lookup("one") == "alice"  # the old book is unchanged
    with pytest.raises(TokensError):
        book.with_token("bad name", "four")
    with pytest.raises(TokensError):
        book.with_token("carol", "")


# --- vramgate token add / list / remove --------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str, default: Path | None = None) -> tuple[int, str, str]:
    code = token_command.main(list(argv), default)
    out, err = capsys.readouterr()
    return code, out, err


def test_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.toml"
    code, out, err = _run(capsys, "add", "alice", "--file", str(path))
    assert code == 0
    token = out.strip()
    assert out == f"{token}\n" and token.startswith("vg_")  # stdout is the token, once, and nothing else
    assert "OLLAMA_API_KEY" in err and token not in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and hash_token(token) in text
    assert TokenBook.parse(text, str(path)).lookup(token) == "alice"

    code, out, _ = _run(capsys, "add", "alice", "--file", str(path))  # a second machine: both work
    second = out.strip()
    book = TokenBook.parse(path.read_text(), str(path))
    assert code == 0 and book.lookup(token) == book.lookup(second) == "alice"

    code, out, _ = _run(capsys, "add", "bob", default=path)  # the default file (the tokens_file setting)
    bobs = out.strip()
    assert code == 0

    code, out, err = _run(capsys, "list", "--file", str(path))
    assert (code, out) == (0, "alice\t2 tokens\nbob\t1 token\n")
    assert "sha256" not in out + err

    code, out, _ = _run(capsys, "add", "alice", "--replace", "--file", str(path))
    third = out.strip()
    book = TokenBook.parse(path.read_text(), str(path))
    assert code == 0 and book.counts() == {"alice": 1, "bob": 1}
    assert book.lookup(third) == "alice" and book.lookup(token) is None and book.lookup(bobs) == "bob"

    code, out, _ = _run(capsys, "remove", "alice", "--file", str(path))
    book = TokenBook.parse(path.read_text(), str(path))
    assert (code, out) == (0, "removed 1 token of alice\n")
    assert book.users() == ["bob"] and book.lookup(third) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.toml"]  # no temporary files left


def test_list_without_a_file_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "list", "--file", str(tmp_path / "none.toml"))
    assert (code, out) == (0, "") and "does not exist yet" in err


def test_add_creates_the_folder_and_tightens_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "etc" / "vramgate" / "tokens.toml"
    assert _run(capsys, "add", "alice", "--file", str(path))[0] == 0
    path.chmod(0o644)
    assert _run(capsys, "add", "bob", "--file", str(path))[0] == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(("argv", "message"), [
    (["remove", "carol"], "has no tokens"),
    (["add", "two words"], "has whitespace"),
    (["add"], "the following arguments are required: NAME"),
    (["frobnicate"], "invalid choice"),
    ([], "the following arguments are required"),
])
def test_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                       message: str) -> None:
    path = tmp_path / "tokens.toml"
    code, out, err = _run(capsys, *argv, default=path)
    assert code == 2 and out == ""
    assert err.startswith("vramgate token: ") and message in err and err.count("\n") == 1
    assert not path.exists()


def test_no_file_given_or_set(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "list")
    assert code == 2 and "--file" in err and "VRAMGATE_TOKENS_FILE" in err and err.count("\n") == 1


def test_a_broken_file_is_reported_and_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('[tokens]\n"sha256:nothex" = "alice"\n')
    code, out, err = _run(capsys, "add", "bob", "--file", str(path))
    assert code == 2 and out == ""
    assert err == f'vramgate token: {path}: line 2: a key is not "sha256:" and 64 hex digits\n'
    assert path.read_text() == '[tokens]\n"sha256:nothex" = "alice"\n'


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert token_command.main(["--help"]) == 0
    assert "add" in capsys.readouterr().out

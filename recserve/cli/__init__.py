"""`recserve`: the embedded stack, the offline chain, the registry, benchmarks and operations.
One module per command group; each registers its commands on the app in `recserve.cli.main`."""

# the order of these imports is the order of --help
from recserve.cli import stack  # noqa: F401,I001 - each registers its commands
from recserve.cli import offline  # noqa: F401
from recserve.cli import registry  # noqa: F401
from recserve.cli import region  # noqa: F401
from recserve.cli import ops  # noqa: F401
from recserve.cli import keys  # noqa: F401
from recserve.cli import experiment  # noqa: F401
from recserve.cli import lake  # noqa: F401
from recserve.cli import loop  # noqa: F401
from recserve.cli import bench  # noqa: F401
from recserve.cli.main import app, main, unwrap_help

unwrap_help(app)  # every command's docstring without its hard line breaks in --help

__all__ = ["app", "main"]

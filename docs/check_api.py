"""Check the built site: every public function, class and constant of ``rld.losses`` and ``rld.models``
(their ``__all__``, submodules aside) has an entry (an anchor ``id="rld.losses.NAME"``) in the API
reference. Exit status 1, listing the missing names, otherwise 0."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path


def missing_entries(site: Path) -> list[str]:
    import rld.losses
    import rld.models

    page = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    missing = []
    for module in (rld.losses, rld.models):
        for name in module.__all__:
            if inspect.ismodule(getattr(module, name)):
                continue
            if f'id="{module.__name__}.{name}"' not in page:
                missing.append(f"{module.__name__}.{name}")
    return missing


if __name__ == "__main__":
    missing = missing_entries(Path(sys.argv[1] if len(sys.argv) > 1 else "site"))
    if missing:
        print(f"the API reference lacks: {', '.join(missing)}", file=sys.stderr)
        sys.exit(1)
    print("API reference: every public name of rld.losses and rld.models is documented")

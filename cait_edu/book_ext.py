"""The book's own Sphinx extension (listed in ``_config.yml`` under ``sphinx: extra_extensions``).

It does three things at build time:

1. **Results page.** Before the table of contents is read it writes ``book/results.md`` from the
   result files under ``data/`` (:mod:`cait_edu.results_page`), so the page always matches them.
2. **Widgets.** A page whose notebook saved its widget state needs RequireJS and
   ``@jupyter-widgets/html-manager`` to draw the widgets; myst-nb links both from CDNs. With
   ``CAIT_EDU_OFFLINE_WIDGETS=1`` in the environment the build fetches the two packages from the
   npm registry instead (``npm pack``, versions pinned below, cached in ``_build/offline-assets/``,
   never committed), copies them to ``_static/offline-widgets/`` in the HTML and points the pages
   there::

       CAIT_EDU_OFFLINE_WIDGETS=1 jupyter-book build .

   (or fetch ahead of time: ``python -m cait_edu.book_ext fetch``). Widget modules other than
   ipywidgets' own (base, controls, output), which html-manager bundles, would still come from the
   CDN; the browser check (``tests/check_rendered_book.py``) reports any such request. Either way a
   small script of ours, ``_static/cait-edu-widgets.js``, runs between the two: html-manager
   typesets widget labels through MathJax 2's ``MathJax.Hub.Queue``, which the book's MathJax 3
   lacks (every labelled widget raised a ``TypeError``), so it gets a ``Hub`` that calls MathJax 3;
   offline, it also tells RequireJS where html-manager's fonts are.
3. **One copy of each inline script.** Sphinx 7 keeps an inline script registered both as
   ``None`` and as ``''`` twice, so sphinx-thebe's ``const THEBE_JS_URL`` was declared twice on
   every page (a JavaScript ``SyntaxError``); duplicates are dropped from each page.

MathJax is not handled here: the ``sphinx-mathjax-offline`` extension ships MathJax 3 and the
pages load it from ``_static/mathjax/``. Nothing is put in a top-level ``_static/`` folder, whose
``.js``/``.css`` files jupyter-book 1.x would inject into every page.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .results_page import write_page

__all__ = ["setup", "fetch_widget_assets", "OFFLINE_ENV", "NPM_PACKAGES"]

OFFLINE_ENV = "CAIT_EDU_OFFLINE_WIDGETS"
NPM_PACKAGES = {
    # html-manager 1.0.x is the embedding manager for ipywidgets 8 (controls 2.0, base 2.0)
    "@jupyter-widgets/html-manager": "1.0.15",
    "requirejs": "2.3.8",
}
VENDOR = "offline-widgets"  # under _static/ in the HTML output (the theme already has a vendor/)
# what each package contributes, from its tarball's package/ folder -> under vendor/
_WANTED = {
    "@jupyter-widgets/html-manager": ("dist/", "html-manager/"),
    "requirejs": ("require.js", "require.js"),
}
_SKIP_SUFFIXES = (".map", "/embed.js", "/libembed-amd.js", ".LICENSE.txt")


def offline_widgets_requested() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def fetch_widget_assets(cache: str | Path) -> Path:
    """Fetch RequireJS and html-manager from npm into ``cache/vendor`` (once per pinned version)."""
    cache = Path(cache)
    vendor = cache / VENDOR
    stamp = cache / "versions.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == NPM_PACKAGES and vendor.is_dir():
        return vendor
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"{OFFLINE_ENV}=1 needs npm to fetch the widget scripts "
                           "(apt-get install npm), or unset it to load them from their CDN")
    shutil.rmtree(vendor, ignore_errors=True)
    vendor.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="cait-edu-npm-") as tmp:
        for package, version in NPM_PACKAGES.items():
            spec = f"{package}@{version}"
            done = subprocess.run([npm, "pack", "--silent", spec], cwd=tmp, capture_output=True, text=True)
            tarballs = [Path(tmp, line.strip()) for line in done.stdout.splitlines() if line.strip()]
            if done.returncode != 0 or not tarballs or not tarballs[-1].is_file():
                raise RuntimeError(f"npm pack {spec} failed: {done.stderr.strip()[-500:]}")
            source, target = _WANTED[package]
            with tarfile.open(tarballs[-1]) as tar:
                for member in tar.getmembers():
                    name = member.name.split("/", 1)[1] if "/" in member.name else member.name
                    if not member.isfile() or not name.startswith(source) or name.endswith(_SKIP_SUFFIXES):
                        continue
                    dest = vendor / (target + name[len(source):] if source.endswith("/") else target)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
    for path in ("require.js", "html-manager/embed-amd.js"):
        if not (vendor / path).is_file():
            raise RuntimeError(f"npm packages {NPM_PACKAGES} did not provide {path}")
    stamp.write_text(json.dumps(NPM_PACKAGES))
    return vendor


# --------------------------------------------------------------------------------------------
# Sphinx hooks


def _write_results_page(app, config) -> None:
    root = Path(app.srcdir)
    page = root / config.cait_edu_results_page
    if write_page(root / config.cait_edu_results_data, page):
        from sphinx.util import logging

        logging.getLogger(__name__).info(f"cait_edu: wrote {page.relative_to(root)} from data/")


SETUP_JS = "cait-edu-widgets.js"  # under _static/, loaded between RequireJS and the html-manager
_SETUP_TEMPLATE = """// Written by cait_edu.book_ext for pages that show Jupyter widgets; loaded after RequireJS and
// before @jupyter-widgets/html-manager.
(function () {
%(paths)s  // html-manager typesets widget labels with MathJax 2's MathJax.Hub.Queue; the book loads
  // MathJax 3 (deferred, so it is in place at DOMContentLoaded), which has no Hub: give it one.
  document.addEventListener('DOMContentLoaded', function () {
    var mj = window.MathJax;
    if (mj && !mj.Hub) {
      mj.Hub = {Queue: function (job) {
        var element = job && job[2];
        if (element && mj.typesetPromise) mj.typesetPromise([element]).catch(function () {});
      }};
    }
  });
})();
"""
_PATHS_JS = """  // html-manager finds its fonts next to the module RequireJS loaded it as: point that module at
  // the local copy, not at a folder named after the npm package beside the page.
  var here = document.currentScript.src.replace(/[^/]*$/, '');
  require.config({paths: {'@jupyter-widgets/html-manager/dist': here + '%(vendor)s/html-manager'}});
"""


def _widget_scripts(app, config) -> None:
    """Choose where widget pages load RequireJS and html-manager from, with our setup in between."""
    from myst_nb.core.config import ipywidgets_js_factory
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    if offline_widgets_requested():
        try:
            app.cait_edu_vendor = fetch_widget_assets(Path(app.outdir).parent / "offline-assets")
        except RuntimeError as exc:
            raise ExtensionError(str(exc)) from exc
        versions = ", ".join(f"{name}@{version}" for name, version in NPM_PACKAGES.items())
        logging.getLogger(__name__).info(f"cait_edu: widget scripts served from _static/{VENDOR}/ ({versions})")
        # relative paths: Sphinx serves them from _static/ with the right ../ on every page
        loader, manager = (f"{VENDOR}/require.js", {}), (f"{VENDOR}/html-manager/embed-amd.js", {})
    else:
        app.cait_edu_vendor = None
        loader, manager = list(ipywidgets_js_factory().items())  # myst-nb's CDN defaults
    config.nb_ipywidgets_js = dict([loader, (SETUP_JS, {}), manager])


def _copy_widget_scripts(app) -> None:
    # at builder-inited, before any page is written, so that pages link them with a checksum
    if app.builder.format != "html":
        return
    from sphinx.util.fileutil import copy_asset

    static = Path(app.outdir, "_static")
    vendor = getattr(app, "cait_edu_vendor", None)
    if vendor is not None:
        copy_asset(str(vendor), str(static / VENDOR))
    paths = _PATHS_JS % {"vendor": VENDOR} if vendor is not None else ""
    static.mkdir(parents=True, exist_ok=True)
    (static / SETUP_JS).write_text(_SETUP_TEMPLATE % {"paths": paths})


def _one_copy_of_each_script(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for js in scripts:
        key = (js.filename or "", js.priority, tuple(sorted(js.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def setup(app):
    app.add_config_value("cait_edu_results_page", "book/results.md", "env")
    app.add_config_value("cait_edu_results_data", "data", "env")
    # before sphinx_external_toc reads _toc.yml (priority 900), which lists the results page
    app.connect("config-inited", _write_results_page, priority=100)
    app.connect("config-inited", _widget_scripts, priority=100)
    app.connect("builder-inited", _copy_widget_scripts)
    app.connect("html-page-context", _one_copy_of_each_script, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["fetch"]:
        print("usage: python -m cait_edu.book_ext fetch [CACHE_DIR]   (default _build/offline-assets)")
        return 2
    cache = Path(argv[1] if len(argv) > 1 else "_build/offline-assets")
    print(fetch_widget_assets(cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""JUnit XML for ``gradflow check --junit``: one ``<testsuite>`` per spec, one ``<testcase>`` per check.

A failed check is a ``<failure>`` (its message says why; the text holds the rendered tables); a spec that
could not be evaluated (bad input) is one ``<testcase name="spec">`` with an ``<error>``. Counts on
``<testsuites>`` and each ``<testsuite>`` (``tests``, ``failures``, ``errors``) match the test cases.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _suite_name(result: Any) -> str:
    return str(result.path)


def junit_tree(results: list[Any]) -> ET.ElementTree:
    """The JUnit document of :class:`gradflow.evaluation.SpecResult` objects."""
    from .report.check import spec_text
    from .report.format import visible

    root = ET.Element("testsuites", name="gradflow check")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    total_time = 0.0
    for result in results:
        suite = ET.SubElement(root, "testsuite", name=visible(_suite_name(result)))
        classname = visible("gradflow." + Path(result.path).stem.replace(".", "_"))
        counts = {"tests": 0, "failures": 0, "errors": 0}
        if result.error is not None:
            case = ET.SubElement(suite, "testcase", classname=classname, name="spec", time="0")
            error = ET.SubElement(case, "error", message=visible(result.error), type="bad input")
            error.text = visible(result.error)
            counts["tests"], counts["errors"] = 1, 1
        else:
            details = spec_text(result) if result.failures else ""
            for check in result.checks:
                case = ET.SubElement(suite, "testcase", classname=classname,
                                     name=visible(f"{check.kind}: {check.name}"), time="0")
                counts["tests"] += 1
                if not check.passed:
                    counts["failures"] += 1
                    message = f"{check.verdict}: {check.detail}" if check.verdict else check.detail
                    failure = ET.SubElement(case, "failure", message=visible(message), type=check.verdict or check.kind)
                    failure.text = details
        suite.set("tests", str(counts["tests"]))
        suite.set("failures", str(counts["failures"]))
        suite.set("errors", str(counts["errors"]))
        suite.set("skipped", "0")
        suite.set("time", f"{result.elapsed_s:.3f}")
        total_time += result.elapsed_s
        for key in totals:
            totals[key] += counts[key]
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{total_time:.3f}")
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_junit(results: list[Any], path: str | Path) -> Path:
    """Write the JUnit XML of ``results`` to ``path`` atomically."""
    from .files import write_atomic

    text = ET.tostring(junit_tree(results).getroot(), encoding="unicode", xml_declaration=False)
    return write_atomic(path, '<?xml version="1.0" encoding="utf-8"?>\n' + text + "\n")

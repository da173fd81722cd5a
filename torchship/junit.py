"""The one JUnit XML writer: compare/regress reports and pipeline gates both come out here."""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CaseStatus", "JUnitCase", "junit_xml"]


class CaseStatus(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class JUnitCase:
    name: str
    status: CaseStatus
    #: the failure or skip message; for a passed case, its system-out text ("" for none)
    message: str = ""


def junit_xml(suite: str, cases: Sequence[JUnitCase]) -> str:
    """A `<testsuite>` with one `<testcase>` per case and its tests/failures/skipped counts."""
    failed = sum(c.status is CaseStatus.FAILED for c in cases)
    skipped = sum(c.status is CaseStatus.SKIPPED for c in cases)
    root = ET.Element(
        "testsuite", name=suite, tests=str(len(cases)), failures=str(failed), skipped=str(skipped)
    )
    for case in cases:
        element = ET.SubElement(root, "testcase", classname=suite, name=case.name)
        if case.status is CaseStatus.FAILED:
            ET.SubElement(element, "failure", message=case.message).text = case.message
        elif case.status is CaseStatus.SKIPPED:
            ET.SubElement(element, "skipped", message=case.message)
        elif case.message:
            ET.SubElement(element, "system-out").text = case.message
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"

"""`endorm report`: a token-level HTML view of endogenous rewards (see docs/REPORT.md)."""

from endorm.report.html import Card, PageInfo, Response, render_report

__all__ = ["Card", "PageInfo", "Response", "render_report"]

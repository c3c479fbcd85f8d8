"""What a trained model and its assignments are worth: ``tell evaluate``
(:mod:`jobs.report.evaluate` over :mod:`jobs.report.contingency`) and ``tell explain``
(:mod:`jobs.report.explain`, the page of :mod:`jobs.report.page` with its figures and HTML)."""

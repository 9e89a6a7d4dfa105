"""Pictures of the workload: pure code that turns figures into SVG, HTML and sparklines.

Nothing here touches the store, a file or a clock: `helpdesk.desk.stats` computes
the figures (`data.Report`), the CLI writes the strings these modules return.
"""

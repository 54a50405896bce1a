"""The evidence report (``layermask evaluate``): the paper's missingness-bias experiments, run on a real
pretrained CNN and real photos for every masking strategy, written as Markdown tables and PNG plots."""

//! Twin ID generation (filled by the idgen issue).

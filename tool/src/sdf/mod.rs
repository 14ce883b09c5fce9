//! Reading and checking a Microkit System Description File (system.xml).

//! Behaviour tests of the stage-2 update engine.

//! Errors and warnings of the SDF reader, printed as Microkit prints them.

use std::fmt;

/// A position in the system description: `file:line:col`, as Microkit
/// prints it (line and column start at 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file name as the caller gave it to [`super::parse`].
    pub file: String,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub col: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// Why a system description was refused. `Display` gives the exact line
/// Microkit's tool prints, so scripts and people that know Microkit read
/// Tenure's errors the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdfError {
    /// The file is not well-formed XML.
    Xml {
        /// The file name.
        file: String,
        /// roxmltree's description, with its own position.
        message: String,
    },
    /// An attribute or value of one element is wrong:
    /// `Error: <message> on element '<element>': <at>`.
    Element {
        /// The sentence.
        message: String,
        /// The element's tag.
        element: String,
        /// Where the element starts.
        at: Location,
    },
    /// A required attribute is absent:
    /// `Error: Missing required attribute '<attribute>' on element '<element>': <at>`.
    MissingAttribute {
        /// The attribute's name.
        attribute: String,
        /// The element's tag.
        element: String,
        /// Where the element starts.
        at: Location,
    },
    /// A rule across elements, reported at the element that breaks it:
    /// `Error: <message> @ <at>`.
    At {
        /// The sentence.
        message: String,
        /// Where the offending element starts.
        at: Location,
    },
    /// An element where it does not belong: `Error: <message>: <at>`.
    Placement {
        /// The sentence.
        message: String,
        /// Where the element starts.
        at: Location,
    },
    /// A rule of the whole system with no one position: `Error: <message>`.
    Global {
        /// The sentence.
        message: String,
    },
}

impl fmt::Display for SdfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SdfError::Xml { file, message } => {
                write!(f, "Error: could not parse '{file}': {message}")
            }
            SdfError::Element { message, element, at } => {
                write!(f, "Error: {message} on element '{element}': {at}")
            }
            SdfError::MissingAttribute { attribute, element, at } => {
                write!(
                    f,
                    "Error: Missing required attribute '{attribute}' on element '{element}': {at}"
                )
            }
            SdfError::At { message, at } => write!(f, "Error: {message} @ {at}"),
            SdfError::Placement { message, at } => write!(f, "Error: {message}: {at}"),
            SdfError::Global { message } => write!(f, "Error: {message}"),
        }
    }
}

impl std::error::Error for SdfError {}

/// Something legal but probably a mistake; the caller decides whether and
/// where to print it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// A memory region no PD or VM maps.
    UnusedMemoryRegion {
        /// The region's name.
        name: String,
        /// Where it is declared.
        at: Location,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::UnusedMemoryRegion { name, .. } => {
                write!(f, "WARNING: unused memory region '{name}'")
            }
        }
    }
}

//! Values the tool writes into a PD's ELF before packing it: `var!`,
//! `memory_region_symbol!`, the PD's name and channel masks.

use core::cell::UnsafeCell;

/// A value in `.data` that the tool patches in the ELF file. The interior
/// cell keeps the compiler from folding the default into the code.
#[repr(transparent)]
pub struct Patched<T>(UnsafeCell<T>);

// SAFETY: nothing writes a patched value at run time; the tool wrote it in
// the file, so every access is a read of memory that never changes.
unsafe impl<T: Sync> Sync for Patched<T> {}

impl<T> Patched<T> {
    /// A value defaulting to `value` until the tool patches it.
    pub const fn new(value: T) -> Self {
        Patched(UnsafeCell::new(value))
    }

    /// The patched value.
    pub fn get(&'static self) -> &'static T {
        // SAFETY: never written at run time (see `Sync`), so a shared
        // reference for the program's life is sound.
        unsafe { &*self.0.get() }
    }
}

/// A symbol the tool patches: `var!(name: Type = default)` evaluates to a
/// `&'static Type` holding what system.xml gave (`setvar_vaddr`,
/// `setvar_size`, `setvar_id`, ...).
#[macro_export]
macro_rules! var {
    ($symbol:ident: $ty:ty = $default:expr) => {{
        #[unsafe(no_mangle)]
        #[used]
        static $symbol: $crate::symbols::Patched<$ty> = $crate::symbols::Patched::new($default);
        $symbol.get()
    }};
}

/// The address of a memory region mapped into this PD, as a
/// `core::ptr::NonNull<T>`: `memory_region_symbol!(name: *mut T)`. Panics
/// if system.xml maps nothing there (the symbol stayed 0).
#[macro_export]
macro_rules! memory_region_symbol {
    ($symbol:ident: *mut $ty:ty) => {{
        let addr = *$crate::var!($symbol: usize = 0);
        core::ptr::NonNull::new(addr as *mut $ty)
            .unwrap_or_else(|| panic!("memory region symbol '{}' was not set", stringify!($symbol)))
    }};
}

/// Longest PD name the tool writes (Microkit's limit).
pub const NAME_LEN: usize = tenure_abi::PD_NAME_LEN;

/// The PD's name, NUL padded, and its channel masks: patched by the tool.
#[unsafe(no_mangle)]
#[used]
pub static __tenure_name: Patched<[u8; NAME_LEN]> = Patched::new([0; NAME_LEN]);
/// Channels this PD may notify (bit per channel id).
#[unsafe(no_mangle)]
#[used]
pub static __tenure_notifications: Patched<u64> = Patched::new(0);
/// Channels this PD may call (pp ends).
#[unsafe(no_mangle)]
#[used]
pub static __tenure_pps: Patched<u64> = Patched::new(0);
/// Channels that are interrupts of this PD.
#[unsafe(no_mangle)]
#[used]
pub static __tenure_irqs: Patched<u64> = Patched::new(0);
/// Whether this PD is passive.
#[unsafe(no_mangle)]
#[used]
pub static __tenure_passive: Patched<u8> = Patched::new(0);
/// The mm guest id of this PD's virtual machine (its index in system.xml
/// plus one), 0 if it has none: a Tenure addition to Microkit's symbols.
#[unsafe(no_mangle)]
#[used]
pub static __tenure_guest: Patched<u64> = Patched::new(0);

/// The PD's name as system.xml gives it.
#[must_use]
pub fn pd_name() -> &'static str {
    let bytes = __tenure_name.get();
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    core::str::from_utf8(&bytes[..len]).unwrap_or("?")
}

/// The mm protocol's id of the guest this PD is the VMM of, if it has a
/// `virtual_machine` (docs/mm-protocol.md: VM index + 1).
#[must_use]
pub fn guest_id() -> Option<u16> {
    u16::try_from(*__tenure_guest.get()).ok().filter(|&id| id != 0)
}

/// Whether the PD is passive (runs only on its callers' time).
#[must_use]
pub fn pd_is_passive() -> bool {
    *__tenure_passive.get() != 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn unpatched_symbols_read_their_defaults() {
        let v = crate::var!(test_symbol_a: u32 = 7);
        assert_eq!(*v, 7);
        assert_eq!(super::pd_name(), "");
        assert!(!super::pd_is_passive());
        assert_eq!(super::guest_id(), None);
    }

    #[test]
    #[should_panic(expected = "memory region symbol 'test_region' was not set")]
    fn an_unset_memory_region_symbol_panics() {
        let _ = crate::memory_region_symbol!(test_region: *mut u8);
    }
}

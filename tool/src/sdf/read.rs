//! Step 1: each element on its own, into the typed tree.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use roxmltree::{Document, Node};
use tenure_abi::{MAX_CHANNEL_ID, MAX_PRIORITY, PD_NAME_LEN};

use super::number::{parse_bool, parse_decimal, parse_number};
use super::{
    BoardLimits, Channel, End, GuestMemory, Irq, Location, Map, MemoryRegion, Perms, Prefill,
    ProgramImage, ProtectionDomain, SdfError, Setvar, SystemDescription, Trigger, Vcpu,
    VirtualMachine,
};

/// Longest period, in microseconds: seL4's `MAX_PERIOD_US`, one hour.
const PERIOD_MAX: u64 = 3_600_000_000;
/// Microkit's default budget (and so period), in microseconds.
const BUDGET_DEFAULT: u64 = 1000;
/// Microkit 2.1's default stack: two pages.
const STACK_SIZE_DEFAULT: u64 = 0x2000;
/// Microkit's smallest stack.
const STACK_SIZE_MIN: u64 = 0x1000;
/// Microkit's largest stack, 16 MiB.
const STACK_SIZE_MAX: u64 = 0x100_0000;
/// The name Microkit keeps for its monitor PD.
const RESERVED_PD_NAME: &str = "monitor";

/// Reads elements of one document.
pub(super) struct Reader<'a, 'input> {
    file: &'a str,
    doc: &'a Document<'input>,
    board: &'a BoardLimits,
    /// Where `prefill_path` files are looked up, in order.
    search_paths: &'a [PathBuf],
}

type Result<T> = std::result::Result<T, SdfError>;

impl<'a, 'input> Reader<'a, 'input> {
    pub(super) fn new(
        file: &'a str,
        doc: &'a Document<'input>,
        board: &'a BoardLimits,
        search_paths: &'a [PathBuf],
    ) -> Self {
        Reader { file, doc, board, search_paths }
    }

    /// Reads `<system>` and everything in it; warnings are left empty.
    pub(super) fn system(&self) -> Result<SystemDescription> {
        let system = self.doc.root_element();
        if system.tag_name().name() != "system" {
            return Err(SdfError::Placement {
                message: format!(
                    "the root element must be 'system', not '{}'",
                    system.tag_name().name()
                ),
                at: self.loc(system),
            });
        }
        self.check_no_text(system)?;
        self.check_attributes(system, &[])?;

        let mut protection_domains = Vec::new();
        let mut memory_regions = Vec::new();
        let mut channel_nodes = Vec::new();
        for child in system.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "protection_domain" => protection_domains.push(self.pd(child, false)?),
                "memory_region" => memory_regions.push(self.memory_region(child)?),
                // Ends name PDs, so channels are read once every PD is.
                "channel" => channel_nodes.push(child),
                "virtual_machine" => {
                    return Err(SdfError::Placement {
                        message: "virtual machine must be a child of a protection domain"
                            .to_string(),
                        at: self.loc(child),
                    });
                }
                _ => return Err(self.invalid_element(child)),
            }
        }
        let channels =
            channel_nodes.into_iter().map(|node| self.channel(node)).collect::<Result<Vec<_>>>()?;
        Ok(SystemDescription { protection_domains, memory_regions, channels, warnings: Vec::new() })
    }

    fn pd(&self, node: Node, is_child: bool) -> Result<ProtectionDomain> {
        let mut attrs = vec![
            "name",
            "priority",
            "budget",
            "period",
            "passive",
            "stack_size",
            "cpu",
            "smc",
            "fpu",
        ];
        if is_child {
            attrs.extend(["id", "setvar_id"]);
        }
        self.check_attributes(node, &attrs)?;

        let name = self.required(node, "name")?.to_string();
        if name == RESERVED_PD_NAME {
            return Err(self.error(node, format!("name '{name}' is reserved for the monitor")));
        }
        if name.len() > PD_NAME_LEN {
            return Err(self.error(
                node,
                format!(
                    "name '{name}' is {} bytes long; the longest allowed is {PD_NAME_LEN}",
                    name.len()
                ),
            ));
        }
        let id = if is_child {
            Some(self.number(node, self.required(node, "id")?, "id")?)
        } else {
            None
        };

        let (priority, budget, period) = self.scheduling(node)?;
        let passive = self.boolean(node, "passive", false)?;

        let stack_size = self.optional_number(node, "stack_size")?.unwrap_or(STACK_SIZE_DEFAULT);
        if !(STACK_SIZE_MIN..=STACK_SIZE_MAX).contains(&stack_size) {
            return Err(self.error(
                node,
                format!(
                    "stack size must be between 0x{STACK_SIZE_MIN:x} bytes and \
                     0x{STACK_SIZE_MAX:x} bytes"
                ),
            ));
        }
        let granule = self.board.page_sizes[0];
        if stack_size % granule != 0 {
            return Err(self.error(
                node,
                format!("stack size must be aligned to the smallest page size, {granule} bytes"),
            ));
        }

        let cpu = self.cpu(node)?.unwrap_or(0);
        let smc = self.boolean(node, "smc", false)?;
        if smc && !self.board.smc_forwarding {
            return Err(self.error(
                node,
                "Using SMC support without ARM SMC forwarding support enabled in the kernel \
                 for this platform"
                    .to_string(),
            ));
        }
        let fpu = self.boolean(node, "fpu", true)?;
        let setvar_id = node.attribute("setvar_id").map(str::to_string);

        let mut program_image = None;
        let mut maps = Vec::new();
        let mut irqs = Vec::new();
        let mut setvars = Vec::new();
        let mut children = Vec::new();
        let mut virtual_machine = None;
        let mut guest_memory: Option<GuestMemory> = None;
        // Symbols this PD's image gets patched with; each may be set once.
        let mut symbols = HashSet::new();
        for child in node.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "program_image" => {
                    self.check_attributes(child, &["path", "path_for_symbols"])?;
                    if program_image.is_some() {
                        return Err(self
                            .error(node, "program_image must only be specified once".to_string()));
                    }
                    program_image = Some(ProgramImage {
                        path: PathBuf::from(self.required(child, "path")?),
                        path_for_symbols: child.attribute("path_for_symbols").map(PathBuf::from),
                    });
                }
                "map" => {
                    // Microkit's `pd_map_max_vaddr`: maps start below the stack.
                    let stack_bottom = self.board.pd_stack_top.saturating_sub(stack_size);
                    let map = self.map(child, true, stack_bottom)?;
                    let symbols_of =
                        [&map.setvar_vaddr, &map.setvar_size, &map.setvar_prefill_size];
                    for symbol in symbols_of.into_iter().flatten() {
                        self.new_symbol(&mut symbols, child, symbol)?;
                    }
                    maps.push(map);
                }
                "irq" => {
                    let irq = self.irq(child)?;
                    if let Some(symbol) = &irq.setvar_id {
                        self.new_symbol(&mut symbols, child, symbol)?;
                    }
                    irqs.push(irq);
                }
                "setvar" => {
                    self.check_attributes(child, &["symbol", "region_paddr"])?;
                    let symbol = self.required(child, "symbol")?.to_string();
                    let region_paddr = self.required(child, "region_paddr")?.to_string();
                    self.new_symbol(&mut symbols, child, &symbol)?;
                    setvars.push(Setvar { symbol, region_paddr, at: self.loc(child) });
                }
                "protection_domain" => {
                    let pd = self.pd(child, true)?;
                    if let Some(symbol) = &pd.setvar_id {
                        self.new_symbol(&mut symbols, child, symbol)?;
                    }
                    children.push(pd);
                }
                "virtual_machine" => {
                    if virtual_machine.is_some() {
                        return Err(self.error(
                            node,
                            "virtual_machine must only be specified once".to_string(),
                        ));
                    }
                    let vm = self.virtual_machine(child)?;
                    for vcpu in child.children().filter(|n| n.has_tag_name("vcpu")) {
                        if let Some(symbol) = vcpu.attribute("setvar_id") {
                            self.new_symbol(&mut symbols, vcpu, symbol)?;
                        }
                    }
                    virtual_machine = Some(vm);
                }
                "guest_memory" => {
                    self.check_attributes(child, &["mr"])?;
                    if guest_memory.is_some() {
                        return Err(self
                            .error(node, "guest_memory must only be specified once".to_string()));
                    }
                    let mr = self.required(child, "mr")?.to_string();
                    guest_memory = Some(GuestMemory { mr, at: self.loc(child) });
                }
                _ => return Err(self.invalid_element(child)),
            }
        }
        let Some(program_image) = program_image else {
            return Err(SdfError::Global {
                message: format!("missing 'program_image' element on protection_domain: '{name}'"),
            });
        };

        Ok(ProtectionDomain {
            name,
            priority,
            passive,
            stack_size,
            budget,
            period,
            cpu,
            smc,
            fpu,
            id,
            setvar_id,
            program_image,
            maps,
            irqs,
            setvars,
            children,
            virtual_machine,
            guest_memory,
            at: self.loc(node),
        })
    }

    /// `priority`, `budget` and `period`, shared by PDs and VMs.
    fn scheduling(&self, node: Node) -> Result<(u8, u64, u64)> {
        let budget = self.optional_number(node, "budget")?.unwrap_or(BUDGET_DEFAULT);
        let period = self.optional_number(node, "period")?.unwrap_or(budget);
        if budget == 0 {
            return Err(self.error(node, "budget must be at least 1 microsecond".into()));
        }
        if period > PERIOD_MAX {
            return Err(self.error(
                node,
                format!("period ({period}) must be at most {PERIOD_MAX} microseconds (one hour)"),
            ));
        }
        if budget > period {
            return Err(self.error(
                node,
                format!("budget ({budget}) must be less than, or equal to, period ({period})"),
            ));
        }
        let priority = self.optional_number(node, "priority")?.unwrap_or(0);
        let priority =
            u8::try_from(priority).ok().filter(|&p| p <= MAX_PRIORITY).ok_or_else(|| {
                self.error(node, format!("priority must be between 0 and {MAX_PRIORITY}"))
            })?;
        Ok((priority, budget, period))
    }

    /// The optional `cpu` attribute, below the board's core count.
    fn cpu(&self, node: Node) -> Result<Option<u32>> {
        let Some(cpu) = self.optional_number(node, "cpu")? else {
            return Ok(None);
        };
        let cpus = self.board.cpus;
        match u32::try_from(cpu) {
            Ok(cpu) if cpu < cpus => Ok(Some(cpu)),
            _ => Err(self.error(node, format!("cpu core must be less than {cpus}, got {cpu}"))),
        }
    }

    fn map(&self, node: Node, allow_setvar: bool, max_vaddr: u64) -> Result<Map> {
        let mut attrs = vec!["mr", "vaddr", "perms", "cached"];
        if allow_setvar {
            attrs.extend(["setvar_vaddr", "setvar_size", "setvar_prefill_size"]);
        }
        self.check_attributes(node, &attrs)?;
        let mr = self.required(node, "mr")?.to_string();
        let vaddr = self.number(node, self.required(node, "vaddr")?, "vaddr")?;
        if vaddr >= max_vaddr {
            return Err(
                self.error(node, format!("vaddr (0x{vaddr:x}) must be less than 0x{max_vaddr:x}"))
            );
        }
        let perms = match node.attribute("perms") {
            None => Perms { read: true, write: true, execute: false },
            Some(text) => {
                let valid = !text.is_empty() && text.chars().all(|c| matches!(c, 'r' | 'w' | 'x'));
                if !valid {
                    return Err(self.error(
                        node,
                        "perms must only be a combination of 'r', 'w', and 'x'".to_string(),
                    ));
                }
                Perms {
                    read: text.contains('r'),
                    write: text.contains('w'),
                    execute: text.contains('x'),
                }
            }
        };
        // No architecture lets the kernel map write-only.
        if perms == (Perms { read: false, write: true, execute: false }) {
            return Err(self.error(
                node,
                "perms must not be 'w', write-only mappings are not allowed".to_string(),
            ));
        }
        let cached = self.boolean(node, "cached", true)?;
        Ok(Map {
            mr,
            vaddr,
            perms,
            cached,
            setvar_vaddr: node.attribute("setvar_vaddr").map(str::to_string),
            setvar_size: node.attribute("setvar_size").map(str::to_string),
            setvar_prefill_size: node.attribute("setvar_prefill_size").map(str::to_string),
            at: self.loc(node),
        })
    }

    fn irq(&self, node: Node) -> Result<Irq> {
        self.check_attributes(node, &["irq", "id", "trigger", "setvar_id"])?;
        let text = self.required(node, "irq")?;
        let irq = parse_decimal(text).map_err(|e| self.bad_number(node, "irq", text, e))?;
        let id = self.channel_id(node)?;
        let trigger = match node.attribute("trigger") {
            None | Some("level") => Trigger::Level,
            Some("edge") => Trigger::Edge,
            Some(_) => {
                return Err(
                    self.error(node, "trigger must be either 'level' or 'edge'".to_string())
                );
            }
        };
        Ok(Irq {
            irq,
            id,
            trigger,
            setvar_id: node.attribute("setvar_id").map(str::to_string),
            at: self.loc(node),
        })
    }

    fn virtual_machine(&self, node: Node) -> Result<VirtualMachine> {
        self.check_attributes(node, &["name", "priority", "budget", "period", "memory_limit"])?;
        let name = self.required(node, "name")?.to_string();
        let (priority, budget, period) = self.scheduling(node)?;
        let memory_limit = self.optional_number(node, "memory_limit")?;
        let mut vcpus: Vec<Vcpu> = Vec::new();
        let mut maps = Vec::new();
        for child in node.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "vcpu" => {
                    self.check_attributes(child, &["id", "cpu", "setvar_id"])?;
                    let id = self.channel_id(child)?;
                    if vcpus.iter().any(|v| v.id == id) {
                        return Err(SdfError::At {
                            message: format!("duplicate vcpu id {id} in virtual machine '{name}'"),
                            at: self.loc(child),
                        });
                    }
                    vcpus.push(Vcpu {
                        id,
                        cpu: self.cpu(child)?,
                        setvar_id: child.attribute("setvar_id").map(str::to_string),
                        at: self.loc(child),
                    });
                }
                // The guest has no image to patch, so no setvar_* here.
                "map" => maps.push(self.map(child, false, self.board.vm_max_vaddr)?),
                _ => return Err(self.invalid_element(child)),
            }
        }
        if vcpus.is_empty() {
            return Err(SdfError::Global {
                message: format!("missing 'vcpu' element on virtual_machine: '{name}'"),
            });
        }
        Ok(VirtualMachine {
            name,
            priority,
            budget,
            period,
            vcpus,
            maps,
            memory_limit,
            at: self.loc(node),
        })
    }

    fn memory_region(&self, node: Node) -> Result<MemoryRegion> {
        self.check_attributes(node, &["name", "size", "page_size", "phys_addr", "prefill_path"])?;
        let name = self.required(node, "name")?.to_string();
        let page_size =
            self.optional_number(node, "page_size")?.unwrap_or(self.board.page_sizes[0]);
        if !self.board.page_sizes.contains(&page_size) {
            return Err(self.error(node, format!("page size 0x{page_size:x} not supported")));
        }
        let prefill = match node.attribute("prefill_path") {
            Some(path) => Some(self.prefill(node, Path::new(path))?),
            None => None,
        };
        // Microkit 2.2: a prefilled region's size defaults to its file's,
        // rounded up to whole pages.
        let size = match (node.attribute("size"), &prefill) {
            (Some(text), _) => self.number(node, text, "size")?,
            (None, Some(p)) => (p.data.len() as u64).max(1).next_multiple_of(page_size),
            (None, None) => return Err(self.missing(node, "size")),
        };
        if let Some(p) = &prefill
            && p.data.len() as u64 > size
        {
            return Err(self.error(
                node,
                format!(
                    "prefill file '{}' ({:#x} bytes) is larger than the memory region \
                     ({size:#x} bytes)",
                    p.path.display(),
                    p.data.len()
                ),
            ));
        }
        if size % page_size != 0 {
            return Err(self.error(node, "size is not a multiple of the page size".to_string()));
        }
        let phys_addr = self.optional_number(node, "phys_addr")?;
        if phys_addr.is_some_and(|pa| pa % page_size != 0) {
            return Err(self.error(node, "phys_addr is not aligned to the page size".to_string()));
        }
        Ok(MemoryRegion { name, size, page_size, phys_addr, prefill, at: self.loc(node) })
    }

    /// Reads a `prefill_path` file: the first of that name in the search
    /// paths, as program images are found.
    fn prefill(&self, node: Node, path: &Path) -> Result<Prefill> {
        let found = self.search_paths.iter().map(|dir| dir.join(path)).find(|p| p.is_file());
        let Some(found) = found else {
            return Err(self.error(
                node,
                format!("unable to find prefill file '{}' in the search paths", path.display()),
            ));
        };
        let data = std::fs::read(&found).map_err(|e| {
            self.error(node, format!("cannot read prefill file '{}': {e}", found.display()))
        })?;
        Ok(Prefill { path: path.to_path_buf(), data })
    }

    fn channel(&self, node: Node) -> Result<Channel> {
        self.check_attributes(node, &[])?;
        let ends = node
            .children()
            .filter(Node::is_element)
            .map(|end| self.end(end))
            .collect::<Result<Vec<_>>>()?;
        let Ok([a, b]) = <[End; 2]>::try_from(ends) else {
            return Err(self.error(node, "exactly two end elements must be specified".to_string()));
        };
        if a.pp && b.pp {
            return Err(self.error(node, "cannot ppc bidirectionally".to_string()));
        }
        Ok(Channel { ends: [a, b], at: self.loc(node) })
    }

    fn end(&self, node: Node) -> Result<End> {
        if node.tag_name().name() != "end" {
            return Err(self.invalid_element(node));
        }
        self.check_attributes(node, &["pd", "id", "pp", "notify", "setvar_id"])?;
        let pd = self.required(node, "pd")?.to_string();
        let id = self.channel_id(node)?;
        let notify = self.boolean(node, "notify", true)?;
        let pp = self.boolean(node, "pp", false)?;
        let at = self.loc(node);
        let setvar_id = node.attribute("setvar_id").map(str::to_string);
        // Whether `pd` names a PD is a rule across elements (rules.rs).
        Ok(End { pd, id, pp, notify, setvar_id, at })
    }

    /// The `id` of an end, irq or vcpu: plain decimal, `0..=MAX_CHANNEL_ID`.
    fn channel_id(&self, node: Node) -> Result<u8> {
        let text = self.required(node, "id")?;
        if let Some(magnitude) = text.strip_prefix('-')
            && parse_decimal(magnitude).is_ok()
        {
            return Err(self.error(node, "id must be >= 0".to_string()));
        }
        let id = parse_decimal(text).map_err(|e| self.bad_number(node, "id", text, e))?;
        u8::try_from(id)
            .ok()
            .filter(|&id| id <= MAX_CHANNEL_ID)
            .ok_or_else(|| self.error(node, format!("id must be < {}", MAX_CHANNEL_ID + 1)))
    }

    /// Records a patched symbol, refusing a second setting of it.
    fn new_symbol(&self, symbols: &mut HashSet<String>, node: Node, symbol: &str) -> Result<()> {
        if symbols.insert(symbol.to_string()) {
            Ok(())
        } else {
            Err(self.error(node, format!("setvar on symbol '{symbol}' already exists")))
        }
    }

    /// Refuses non-whitespace text anywhere below `node`.
    fn check_no_text(&self, node: Node) -> Result<()> {
        for text in node.descendants().filter(Node::is_text) {
            if !text.text().unwrap_or("").trim().is_empty() {
                let parent = text.parent_element().unwrap_or(node);
                return Err(SdfError::At {
                    message: format!(
                        "unexpected text found in element '{}'",
                        parent.tag_name().name()
                    ),
                    at: self.loc_of(text.range().start + leading_whitespace(text)),
                });
            }
        }
        Ok(())
    }

    fn check_attributes(&self, node: Node, allowed: &[&str]) -> Result<()> {
        match node.attributes().find(|a| !allowed.contains(&a.name())) {
            Some(attr) => Err(self.error(node, format!("invalid attribute '{}'", attr.name()))),
            None => Ok(()),
        }
    }

    fn required<'n>(&self, node: Node<'n, 'input>, attribute: &str) -> Result<&'n str> {
        node.attribute(attribute).ok_or_else(|| self.missing(node, attribute))
    }

    fn missing(&self, node: Node, attribute: &str) -> SdfError {
        SdfError::MissingAttribute {
            attribute: attribute.to_string(),
            element: node.tag_name().name().to_string(),
            at: self.loc(node),
        }
    }

    fn boolean(&self, node: Node, attribute: &str, default: bool) -> Result<bool> {
        match node.attribute(attribute) {
            None => Ok(default),
            Some(text) => parse_bool(text)
                .ok_or_else(|| self.error(node, format!("{attribute} must be 'true' or 'false'"))),
        }
    }

    fn optional_number(&self, node: Node, attribute: &str) -> Result<Option<u64>> {
        node.attribute(attribute).map(|text| self.number(node, text, attribute)).transpose()
    }

    fn number(&self, node: Node, text: &str, attribute: &str) -> Result<u64> {
        parse_number(text).map_err(|e| self.bad_number(node, attribute, text, e))
    }

    fn bad_number(
        &self,
        node: Node,
        attribute: &str,
        text: &str,
        error: super::number::NumberError,
    ) -> SdfError {
        self.error(node, format!("failed to parse integer '{text}' for '{attribute}' ({error})"))
    }

    fn invalid_element(&self, node: Node) -> SdfError {
        SdfError::Placement {
            message: format!("invalid XML element '{}'", node.tag_name().name()),
            at: self.loc(node),
        }
    }

    fn error(&self, node: Node, message: String) -> SdfError {
        SdfError::Element {
            message,
            element: node.tag_name().name().to_string(),
            at: self.loc(node),
        }
    }

    fn loc(&self, node: Node) -> Location {
        self.loc_of(node.range().start)
    }

    fn loc_of(&self, offset: usize) -> Location {
        let pos = self.doc.text_pos_at(offset);
        Location { file: self.file.to_string(), line: pos.row, col: pos.col }
    }
}

/// Bytes of whitespace before the first visible character of a text node,
/// so an error points at the text itself.
fn leading_whitespace(text: Node) -> usize {
    let raw = text.text().unwrap_or("");
    raw.len() - raw.trim_start().len()
}

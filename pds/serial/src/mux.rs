//! Labelling of output lines and routing of input between clients.

/// The escape byte (Ctrl-], as telnet uses it): followed by a client's
/// number (`0`-`9`), it switches input to that client; followed by itself
/// it sends one escape byte to the current client.
pub const ESCAPE: u8 = 0x1d;

/// What one input byte does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Input {
    /// Deliver the byte to this client.
    Deliver {
        /// The client receiving input.
        client: usize,
        /// The byte.
        byte: u8,
    },
    /// Input now goes to this client.
    Switched(usize),
    /// The byte was the escape; wait for the next one.
    Escape,
    /// An escape followed by something that names no client: dropped.
    Ignored,
}

/// The multiplexer for up to `N` clients.
#[derive(Debug)]
pub struct Mux<const N: usize> {
    clients: usize,
    at_line_start: [bool; N],
    /// The client whose line is on the terminal and unfinished.
    open_line: Option<usize>,
    input_to: usize,
    escaped: bool,
}

impl<const N: usize> Mux<N> {
    /// A multiplexer for `clients` clients (at most `N`); input starts with
    /// client 0.
    #[must_use]
    pub fn new(clients: usize) -> Self {
        Mux {
            clients: clients.min(N),
            at_line_start: [true; N],
            open_line: None,
            input_to: 0,
            escaped: false,
        }
    }

    /// The client that receives input.
    #[must_use]
    pub fn input_client(&self) -> usize {
        self.input_to
    }

    /// Writes `bytes` from `client` to the terminal through `out`, with
    /// `name| ` before each of its lines. If another client's line is
    /// unfinished, it is ended first, so lines never mix.
    pub fn output(&mut self, client: usize, name: &str, bytes: &[u8], out: &mut impl FnMut(u8)) {
        if client >= self.clients {
            return;
        }
        for &b in bytes {
            if let Some(other) = self.open_line
                && other != client
            {
                out(b'\n');
                self.at_line_start[other] = true;
                self.open_line = None;
            }
            if self.at_line_start[client] {
                name.bytes().chain(*b"| ").for_each(&mut *out);
                self.at_line_start[client] = false;
            }
            out(b);
            if b == b'\n' {
                self.at_line_start[client] = true;
                self.open_line = None;
            } else {
                self.open_line = Some(client);
            }
        }
    }

    /// Routes one byte typed on the terminal.
    pub fn input(&mut self, byte: u8) -> Input {
        if !self.escaped {
            if byte == ESCAPE {
                self.escaped = true;
                return Input::Escape;
            }
            return Input::Deliver { client: self.input_to, byte };
        }
        self.escaped = false;
        match byte {
            ESCAPE => Input::Deliver { client: self.input_to, byte },
            b'0'..=b'9' if usize::from(byte - b'0') < self.clients => {
                self.input_to = usize::from(byte - b'0');
                Input::Switched(self.input_to)
            }
            _ => Input::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render<const N: usize>(mux: &mut Mux<N>, writes: &[(usize, &str, &str)]) -> String {
        let mut out = Vec::new();
        for &(c, name, text) in writes {
            mux.output(c, name, text.as_bytes(), &mut |b| out.push(b));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_line_carries_its_clients_name() {
        let mut mux: Mux<4> = Mux::new(2);
        let text = render(
            &mut mux,
            &[(0, "ping", "hello\nwor"), (0, "ping", "ld\n"), (1, "pong", "hi\n")],
        );
        assert_eq!(text, "ping| hello\nping| world\npong| hi\n");
    }

    #[test]
    fn an_unfinished_line_is_ended_before_another_client_writes() {
        let mut mux: Mux<4> = Mux::new(2);
        let text = render(&mut mux, &[(0, "a", "half"), (1, "b", "other\n"), (0, "a", " rest\n")]);
        assert_eq!(text, "a| half\nb| other\na|  rest\n");
    }

    #[test]
    fn output_from_an_unknown_client_is_dropped() {
        let mut mux: Mux<4> = Mux::new(1);
        assert_eq!(render(&mut mux, &[(3, "x", "boo\n")]), "");
    }

    #[test]
    fn escape_then_a_number_switches_input() {
        let mut mux: Mux<4> = Mux::new(3);
        assert_eq!(mux.input(b'a'), Input::Deliver { client: 0, byte: b'a' });
        assert_eq!(mux.input(ESCAPE), Input::Escape);
        assert_eq!(mux.input(b'2'), Input::Switched(2));
        assert_eq!(mux.input(b'b'), Input::Deliver { client: 2, byte: b'b' });
        assert_eq!(mux.input(ESCAPE), Input::Escape);
        assert_eq!(mux.input(b'7'), Input::Ignored, "no client 7");
        assert_eq!(mux.input_client(), 2);
        assert_eq!(mux.input(ESCAPE), Input::Escape);
        assert_eq!(mux.input(ESCAPE), Input::Deliver { client: 2, byte: ESCAPE });
    }
}

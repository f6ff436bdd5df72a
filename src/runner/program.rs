//! Which program a shell command runs: the first word that is not an
//! assignment, `env`, `exec` or `command`. `orch doctor` checks that program
//! is installed, and the sandbox shows its directory to the run.

/// The program an agent command runs: the first word that is not a variable
/// assignment (and not `env`/`exec`), with shell quotes removed. `None` when
/// the command starts with something else the shell interprets.
pub fn agent_program(command: &str) -> Option<String> {
    let mut words = shell_words(command).into_iter();
    loop {
        let w = words.next()?;
        let is_assignment = w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if is_assignment || w == "exec" || w == "env" || w == "command" {
            continue;
        }
        if w.starts_with('-')
            || w.contains('$')
            || w.contains('`')
            || [
                "cd", ".", "source", "set", "export", "if", "for", "while", "case", "{", "(", "!",
                "eval",
            ]
            .contains(&w.as_str())
        {
            return None;
        }
        return Some(w);
    }
}

/// Split the start of a shell command into words, honouring `'…'`, `"…"`
/// and `\`; stops at the first operator (`;`, `|`, `&`, `<`, `>`).
pub fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                cur.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            ';' | '|' | '&' | '<' | '>' | '\n' => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Where a shell would find `program`: the path itself when it has a `/`,
/// else the first executable regular file of that name on `PATH`.
pub fn find_in_path(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_program_is_the_first_real_word() {
        assert_eq!(
            agent_program("claude -p --verbose < \"$ORCH_TASK_FILE\"").as_deref(),
            Some("claude")
        );
        assert_eq!(
            agent_program("'/opt/my orch/orch' demo-agent").as_deref(),
            Some("/opt/my orch/orch")
        );
        assert_eq!(
            agent_program("FOO=1 env BAR=2 exec codex run").as_deref(),
            Some("codex")
        );
        assert_eq!(agent_program("cd sub && make"), None);
        assert_eq!(agent_program("$AGENT"), None);
        assert_eq!(agent_program(""), None);
    }
}

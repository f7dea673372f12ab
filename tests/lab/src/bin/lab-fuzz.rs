//! `make fuzz`: the long scheme-fuzzer campaign (see `lab::fuzz`). Prints
//! its totals; exits non-zero if anything hung, crashed, died, restarted,
//! stopped answering, leaked a file, changed the check disk, or let the
//! ordinary user through.
//!
//!   lab-fuzz [--seed S] [--rounds R] [--procs N] [--ops M] [--round-bound-s B]

use std::time::Duration;

use lab::fuzz::{run, Campaign};

fn main() {
    let mut c = Campaign {
        name: "fuzz".to_owned(),
        seed: 1,
        rounds: 12,
        procs: 8,
        ops: 16000,
        round_bound: Duration::from_secs(600),
        call_bound: Duration::from_secs(10),
        sabotage: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let usage = || -> ! {
        eprintln!(
            "usage: lab-fuzz [--seed S] [--rounds R] [--procs N] [--ops M] [--round-bound-s B]"
        );
        std::process::exit(2)
    };
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--seed", Some(v)) => c.seed = v,
            ("--rounds", Some(v)) if v > 0 => c.rounds = v as usize,
            ("--procs", Some(v)) if v > 0 => c.procs = v as usize,
            ("--ops", Some(v)) => c.ops = v as usize,
            ("--round-bound-s", Some(v)) if v > 0 => c.round_bound = Duration::from_secs(v),
            _ => usage(),
        }
    }
    println!(
        "seeds {}..{}, {} rounds of {} workers x {} calls",
        c.seed,
        c.seed + c.rounds as u64 - 1,
        c.rounds,
        c.procs,
        c.ops
    );
    match run(&c) {
        Ok(r) => {
            r.print();
            if !r.clean() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("lab-fuzz: {e}");
            std::process::exit(1);
        }
    }
}

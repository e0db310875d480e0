//! patronictl is not implemented yet (its own issue). It says so plainly instead of
//! pretending: use upstream's patronictl (pip install patroni[etcd3]) meanwhile; it works
//! against our cluster because the DCS keys and REST API are the same.
fn main() {
    eprintln!(
        "patronictl is not implemented in this build yet; upstream's patronictl \
         (pip install 'patroni[etcd3]') works against this cluster"
    );
    std::process::exit(2);
}
